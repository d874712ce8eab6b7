"""The gRPC edge: servicers, interceptors and the server. Thin: convert, call the core, convert."""
