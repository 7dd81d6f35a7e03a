import platform
import sys

print(f"hello from Python {platform.python_version()} on {platform.system()} "
      f"({sys.implementation.name})")
