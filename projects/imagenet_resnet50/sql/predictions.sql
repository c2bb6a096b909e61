{{ config(materialized='incremental', unique_key='path') }}
-- Top-5 ImageNet classes per image; a build scores only images not scored before.
SELECT path, modificationTime AS modified, resnet50_predict(content) AS top5
FROM {{ source('images') }}
