"""Pure maths (numpy/torch): rigid and similarity transforms, cameras, alignment."""
