-- The three passages closest to each question: semantic search in SQL.
{{ config(materialized='table') }}
WITH questions AS (
  SELECT value AS question, embed(value) AS embedding FROM {{ source('questions') }} WHERE trim(value) <> ''
)
SELECT q.question, e.passage_id, e.passage, vector_cosine_similarity(q.embedding, e.embedding) AS similarity
FROM questions q CROSS JOIN {{ ref('passage_embeddings') }} e
QUALIFY row_number() OVER (PARTITION BY q.question ORDER BY similarity DESC, e.passage_id) <= 3
