{{ config(materialized='incremental', unique_key='path') }}
-- The same predictions, kept incrementally: a build scores only images whose path is new.
SELECT path, split, label, digits_predict(content) AS pred, current_timestamp() AS scored_at
FROM {{ source('digits_images') }}
