# Copy to instance/config.py to override defaults on this machine (environment variables still win).
# Names are those of the README's configuration table, without the VOICEFORGE_ prefix, except gunicorn's
# (BIND, WORKERS, THREADS, ...), PORT and INSTANCE_PATH, which only the environment sets.
# MODEL_DIR = "/srv/models/xtts_v2"
# DEVICE = "cuda"
# CORS_ORIGINS = ["https://studio.example.com"]
# DEFAULT_LANGUAGE = "en"
