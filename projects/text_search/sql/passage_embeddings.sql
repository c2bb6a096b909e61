-- One embedding per passage: the model runs here, once per passage. The book is one file, so its
-- passages arrive as one partition: REPARTITION spreads them over the cores.
{{ config(materialized='table') }}
SELECT /*+ REPARTITION(4) */ passage_id, passage, embed(passage) AS embedding
FROM {{ ref('passages') }}
