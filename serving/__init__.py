"""Online serving: read feature vectors back from Redis for a model."""
