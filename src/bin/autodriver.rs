//! `autodriver`: runs `make` in a grading directory under limits (see docs/autodriver.md).

fn main() {
    std::process::exit(tango::autodriver::main());
}
