{{ config(materialized='view') }}
-- Rows: true digit; columns: predicted digit; cells: image counts on the held-out split.
SELECT * FROM (
  SELECT label, predicted_index FROM {{ ref('digit_predictions') }} WHERE split = {{ var('eval_split', 'test') }}
)
PIVOT (count(*) FOR predicted_index IN (0, 1, 2, 3, 4, 5, 6, 7, 8, 9))
ORDER BY label
