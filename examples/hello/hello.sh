#!/bin/sh
# A student's handin for the quick start's "hello" lab.
echo "Hello, world!"
