# Put on PYTHONPATH by bench/compat/run.py only: wraps every app of the suite under test.
import wrap

wrap.install()
