#!/usr/bin/env node
import '../dist/vmlb.mjs';
