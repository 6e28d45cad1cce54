"""Training and demo data: procedural synthetic scenes, dataset readers, and frame sampling."""
