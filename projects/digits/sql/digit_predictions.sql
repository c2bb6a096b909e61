{{ config(materialized='table') }}
-- Every digit image with its predicted class and every class's probability (one forward pass:
-- digits_scores returns both, as struct<label: struct<label, index, score>, probabilities>).
SELECT path, split, label, scores.label.label AS predicted, scores.label.index AS predicted_index,
       scores.label.score AS score, scores.probabilities AS probabilities
FROM (SELECT path, split, label, digits_scores(content) AS scores FROM {{ source('digits_images') }})
