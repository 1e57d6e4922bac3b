"""Planning analyses: toilet access and siting, camera coverage, renovation, grid balance."""
