#!/usr/bin/env node
console.log("kernel not built yet");
