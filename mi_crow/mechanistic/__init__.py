"""SAE training and concept discovery/steering."""
