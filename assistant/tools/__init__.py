"""The tools the model can call: built-ins (one object each: harmony spec + runner, builtin.py) and registered
functions. Imports nothing here: the sandbox's own files run from a copy of this folder alone."""
