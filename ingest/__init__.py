"""The upload API: validate, hash, transcode and store images at the origin."""
