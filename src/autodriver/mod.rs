//! The autodriver: runs `make` in a grading directory under limits and prints its output.
