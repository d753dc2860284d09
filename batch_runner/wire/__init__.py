"""The wire: what the Z-Image API's bytes mean (protocol) and the HTTP client."""
