{{ config(materialized='view') }}
-- Accuracy on the held-out split (var eval_split, default 'test').
SELECT split, count(*) AS images, sum(CAST(predicted_index = label AS INT)) AS correct,
       round(avg(CAST(predicted_index = label AS DOUBLE)), 4) AS accuracy
FROM {{ ref('digit_predictions') }}
WHERE split = {{ var('eval_split', 'test') }}
GROUP BY split
