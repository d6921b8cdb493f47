"""What a device (the mobile app, `cadence demo`, load tests) runs against the server.

Windowing and feature extraction on the device, request signing, an HTTP client.
"""
