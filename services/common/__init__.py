"""What every mi-crow server shares: configuration, error mapping, auth, conversions, server set-up."""
