"""A labeling project as Label Studio's ML backend (`autoal serve`): the protocol as data, a round as a
Ray task, the backend's state, Label Studio's API, and the Ray Serve application."""
