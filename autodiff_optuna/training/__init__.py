"""Training the bundled digits models and their FID feature network (``make train-digits``)."""
