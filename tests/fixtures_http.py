"""HTTP peers: a real threaded receiver on 127.0.0.1 whose behaviour each test switches."""
