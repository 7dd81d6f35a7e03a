import getpass
import os

import six

print(f"hello from python as {getpass.getuser()} (uid {os.getuid()}) in {os.getcwd()}, "
      f"six {six.__version__}, PY3={six.PY3}")
