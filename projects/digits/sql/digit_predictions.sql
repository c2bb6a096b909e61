{{ config(materialized='table') }}
-- Every digit image with its predicted class and every class's probability.
SELECT path, split, label, pred.label AS predicted, pred.index AS predicted_index, pred.score AS score,
       probabilities
FROM (SELECT path, split, label, digits_predict(content) AS pred, digits_probabilities(content) AS probabilities
      FROM {{ source('digits_images') }})
