/**
 * Agent personas live under their spawner in segments that begin with "agent.": a name no
 * registered persona may take (persona.register and the CLI refuse it), so an agent can never
 * replace, inherit or remove a real persona's key.
 */
export const AGENT_SEGMENT = "agent.";

/** The persona an agent `instance` of `spawner` acts as. */
export const agentPersona = (spawner: string, instance: string) => `${spawner}/${AGENT_SEGMENT}${instance}`;

/** Whether `id` is (or lies under) an agent persona: never registered by anyone but the agent manager. */
export const isAgentPersona = (id: string) => id.split("/").some((s) => s.startsWith(AGENT_SEGMENT));

/** Agent ids are scoped to their spawner: the record key of agent://<executable>/<instance> of `spawner`. */
export const agentKey = (spawner: string, executable: string, instance: string) => `${spawner}/${executable}/${instance}`;

/** agent://<executable>/<instance> of a record key. */
export function agentUri(key: string): string {
  const parts = key.split("/");
  return `agent://${parts.slice(-2).join("/")}`;
}

/**
 * The innermost agent persona `id` is or lies under (its prefix up to its last segment beginning
 * "agent."), or undefined outside the agent namespace.
 */
export function innermostAgent(id: string): string | undefined {
  const parts = id.split("/");
  for (let i = parts.length - 1; i >= 0; i--)
    if ((parts[i] as string).startsWith(AGENT_SEGMENT)) return parts.slice(0, i + 1).join("/");
  return undefined;
}
