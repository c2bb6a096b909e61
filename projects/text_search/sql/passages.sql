-- The book cut into passages at . ! ? ; and : (its long 17th-century sentences are lists of
-- clauses), italics marks (_) dropped; passages shorter than 20 characters are left out.
{{ config(materialized='table') }}
SELECT CAST(position AS INT) AS passage_id, trim(passage) AS passage
FROM {{ source('book') }}
LATERAL VIEW posexplode(split(regexp_replace(replace(value, '_', ''), '\\s+', ' '), '(?<=[.!?;:])\\s+')) p AS position, passage
WHERE length(trim(passage)) >= 20
