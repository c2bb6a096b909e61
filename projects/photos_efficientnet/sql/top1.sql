{{ config(materialized='view') }}
SELECT photo, top3[0].label AS label, round(top3[0].score, 3) AS score,
       concat_ws(', ', transform(slice(top3, 2, 2), t -> concat(t.label, ' ', round(t.score, 3)))) AS next_two
FROM {{ ref('photo_labels') }}
ORDER BY photo
