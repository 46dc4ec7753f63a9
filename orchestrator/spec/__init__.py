"""What is planned for: the app spec, its typed I/O, profiles, measured accuracies, the GPU catalogue."""
