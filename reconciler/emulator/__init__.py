"""The local Oystehr Project Service (to be built: issue 3)."""
