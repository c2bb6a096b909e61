{{ config(materialized='incremental', unique_key='photo') }}
-- The three most likely ImageNet classes of each photo; a build scores only photos not scored before.
SELECT regexp_extract(path, '([^/]+)$', 1) AS photo, efficientnet_lite0_predict(content) AS top3
FROM {{ source('photos') }}
