"""Audio in and out, by job: data URIs, decoding uploads, reference clips, encoding output."""
