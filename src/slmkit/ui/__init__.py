"""The web board (`slm ui`): the same stage functions as the CLI, in a Gradio page."""
