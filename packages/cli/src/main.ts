#!/usr/bin/env node
import { dispatch } from "./dispatch.js";
import { exitWith } from "./exit.js";

exitWith(dispatch(process.argv.slice(2)));
