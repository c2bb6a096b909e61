{{ config(materialized='table') }}
-- Every digit image with its predicted class (the network runs once per image).
SELECT path, split, label, pred.label AS predicted, pred.index AS predicted_index, pred.score AS score
FROM (SELECT path, split, label, digits_predict(content) AS pred FROM {{ source('digits_images') }})
