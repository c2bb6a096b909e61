{{ config(materialized='view') }}
SELECT path, top5[0].label AS label, round(top5[0].score, 4) AS score
FROM {{ ref('predictions') }}
WHERE top5[0].score >= {{ var('min_score', 0.0) }}
