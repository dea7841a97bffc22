import { defineOp } from "./define.js";

/* persona.* — the persona registry through the one audited door. */

const personaRecord = {
  persona: { type: "text", required: true, description: "the persona id" },
  publicKey: { type: "bytes", required: true, description: "its raw Ed25519 public key (32 bytes)" },
  created: { type: "uint", required: true, description: "registration time, ms since the epoch" },
} as const;

export const personaRegister = defineOp({
  op: "persona.register",
  description:
    "Register persona://<id> with its Ed25519 public key (32 bytes); it may attest at once. SEMANTIC for a key that is no usable Ed25519 public key (not a point, or one of small order: PROTOCOL §8.4). A persona other than the admin registers only under the top of its own persona tree (PERMISSION otherwise). RESOURCE when the caller's persona tree has registered as many as the kernel allows (the admin is exempt).",
  targets: ["persona"],
  args: { publicKey: { type: "bytes", required: true, description: "the persona's raw Ed25519 public key" } },
  result: personaRecord,
  idempotent: false,
  effects: true,
});

export const personaRemove = defineOp({
  op: "persona.remove",
  description:
    "Remove persona://<id> and its sub-personas, with every persona one of them (or an agent of theirs, ended or not) registered (persona.register) outside that subtree, and every persona those registered, repeatedly — each of those alone (a persona someone else registered under one stays), never the caller or a persona above it: their open sessions end at once (ERROR AUTH PERSONA_REMOVED), agents running as them are killed, the commands and tasks they submitted end, their uploads in progress are dropped, and the tokens minted for them or by them (a sub-persona minting from its parent's token included) are revoked, with every token minted from those, in the removal's own commit and record. A persona other than the admin removes only personas in its own persona tree, never itself or one above it (PERMISSION otherwise).",
  targets: ["persona"],
  args: {},
  result: {
    removed: { type: "text", required: true, description: "the persona removed" },
    alsoRemoved: {
      type: "array",
      required: true,
      items: { type: "text", description: "a persona id" },
      description: "its sub-personas and the personas they registered, removed with it",
    },
    sessionsEnded: { type: "uint", required: true, description: "open sessions ended" },
    tokensRevoked: { type: "uint", required: true, description: "tokens revoked" },
  },
  idempotent: false,
  effects: true,
});

export const personaList = defineOp({
  op: "persona.list",
  description:
    "persona://<id> and its registered sub-personas, with their public keys, in id order; PARTIAL with a cursor when more remain. Authorized on the subtree it lists: a grant must cover persona://<id>/**.",
  targets: ["persona"],
  reach: "subtree",
  args: {
    cursor: { type: "text", description: "the cursor of the previous page" },
    limit: { type: "uint", description: "personas per page (default 100, at most 1000)" },
  },
  result: {
    personas: {
      type: "array",
      required: true,
      description: "the registered personas at or under the target, in id order",
      items: { type: "map", description: "a persona", fields: personaRecord },
    },
    cursor: { type: "text", description: "PARTIAL: pass it to get the next page" },
  },
  answers: { PARTIAL: "more personas remain: the payload's `cursor` asks for the next page" },
  idempotent: true,
  effects: false,
});

export const personaOps = [personaRegister, personaRemove, personaList] as const;
