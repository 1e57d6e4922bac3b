"""Visit routing: walking networks, distance matrices, the VRP solver adapter, campaigns."""
