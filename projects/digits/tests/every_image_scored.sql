-- A singular data test: the rows it selects are failures. Every image of the source has a prediction.
SELECT i.path FROM {{ source('digits_images') }} AS i
LEFT ANTI JOIN {{ ref('digit_predictions') }} AS p ON i.path = p.path
