"""Built-in providers: litellm (remote and server models), local (in-process model), replay."""
