-- Each passage's three nearest passages elsewhere in the book, by the cosine similarity of their
-- embeddings (Spark's vector_cosine_similarity, Spark 4.3+). Each pair is compared once (a < b)
-- and counted for both passages.
{{ config(materialized='table') }}
WITH pairs AS (
  SELECT a.passage_id AS a_id, b.passage_id AS b_id, vector_cosine_similarity(a.embedding, b.embedding) AS similarity
  FROM {{ ref('passage_embeddings') }} a
  JOIN {{ ref('passage_embeddings') }} b ON a.passage_id < b.passage_id
),
both_ways AS (
  SELECT a_id AS passage_id, b_id AS neighbour_id, similarity FROM pairs
  UNION ALL
  SELECT b_id, a_id, similarity FROM pairs
)
SELECT passage_id, neighbour_id, similarity,
       row_number() OVER (PARTITION BY passage_id ORDER BY similarity DESC, neighbour_id) AS rank
FROM both_ways
QUALIFY rank <= 3
