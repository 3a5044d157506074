"""Code that both notebooks share: the features, the model bundle on disk, the
checks of notebook parameters and the way the service is started."""
