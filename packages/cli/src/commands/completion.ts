import type { Command } from "../command.js";
import { UsageError } from "../util.js";

/** Subcommands of the commands that have them, for completion (the first word after the command). */
const SUBCOMMANDS: Record<string, string[]> = {
  persona: ["create", "add", "list", "remove"],
  token: ["mint", "attenuate", "inspect", "revoke", "list", "rotate-key", "retire-key"],
  agents: ["list", "spawn", "kill", "status", "logs"],
  ops: ["list", "status", "result", "cancel"],
  events: ["tail"],
  audit: ["timeline", "show", "tokens", "verify", "tail", "query"],
  completion: ["bash", "zsh"],
};

/** One shell function over a table of words: commands, their subcommands and their flags. */
function bashScript(table: Record<string, string>): string {
  const cases = Object.entries(table)
    .map(([cmd, words]) => `    ${cmd}) words="${words}" ;;`)
    .join("\n");
  return `# kpip completion for bash: eval "$(kpip completion bash)" in ~/.bashrc
_kpip() {
  local cur=\${COMP_WORDS[COMP_CWORD]} cmd="" words i
  for ((i = 1; i < COMP_CWORD; i++)); do
    case \${COMP_WORDS[i]} in
      --home|--socket|--identity|--token) ((i++)) ;;
      -*) ;;
      *) cmd=\${COMP_WORDS[i]}; break ;;
    esac
  done
  case $cmd in
    "") words="${Object.keys(table).join(" ")} --help --version --home" ;;
${cases}
  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o default -F _kpip kpip
`;
}

/**
 * The completion command over the command list it is given (the list includes this command, so
 * it is passed in by the registry rather than imported from it: no import cycle).
 */
export const completionCommand = (loadCommands: () => Promise<Command[]>): Command => ({
  name: "completion",
  summary: "print a shell completion script (bash or zsh)",
  usage: "kpip completion bash|zsh",
  example: 'eval "$(kpip completion bash)"   # or, for zsh: eval "$(kpip completion zsh)"',
  options: {},
  async run(_v, pos) {
    const [shell, ...extra] = pos;
    if (extra.length) throw new UsageError(`unexpected arguments: ${extra.join(" ")}`);
    if (shell !== "bash" && shell !== "zsh") throw new UsageError("name the shell: kpip completion bash|zsh");
    const table: Record<string, string> = {};
    for (const c of await loadCommands()) {
      const flags = Object.keys(c.options).map((o) => `--${o}`);
      table[c.name] = [...(SUBCOMMANDS[c.name] ?? []), ...flags, "--help"].join(" ");
    }
    const script = bashScript(table);
    // zsh runs bash completion functions through bashcompinit
    process.stdout.write(shell === "bash" ? script : `autoload -U +X bashcompinit && bashcompinit\n${script}`);
    return 0;
  },
});
