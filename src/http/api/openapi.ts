/** The OpenAPI 3.1 document, generated from the route table and its zod schemas. */

import { z } from "zod";
import type { ApiRoute } from "./framework.ts";
import { documentedInputs, requestSchemas, responseSchemas } from "./schemas.ts";

type Json = Record<string, unknown>;

const COMPONENTS = "#/components/schemas/";

/** Drops the keys JSON Schema documents carry at their root but OpenAPI components do not need. */
function component(schema: Json): Json {
  const { $schema: _s, $id: _i, ...rest } = schema;
  return rest;
}

/** Puts in the JSON Schemas of request fields that say what they take (see documentedInputs). */
function override(ctx: { zodSchema: unknown; jsonSchema: Json }): void {
  const documented = documentedInputs.get(ctx.zodSchema as z.ZodType);
  if (!documented) return;
  const { description } = ctx.jsonSchema;
  for (const key of Object.keys(ctx.jsonSchema)) delete ctx.jsonSchema[key];
  Object.assign(ctx.jsonSchema, description === undefined ? {} : { description }, documented);
}

/** A body schema: a `$ref` when it is a registered component, else inline. */
function schemaOf(schema: z.ZodType, io: "input" | "output"): Json {
  const id = (io === "input" ? requestSchemas : responseSchemas).get(schema)?.id;
  if (id) return { $ref: COMPONENTS + id };
  return component(z.toJSONSchema(schema, { io, override }) as Json);
}

/** OpenAPI parameter objects for a path or query object schema. */
function parameters(schema: z.ZodType | undefined, where: "path" | "query"): Json[] {
  if (!schema) return [];
  const json = z.toJSONSchema(schema, { io: "input", override }) as Json;
  const properties = (json.properties ?? {}) as Record<string, Json>;
  const required = new Set((json.required ?? []) as string[]);
  return Object.entries(properties).map(([name, property]) => {
    const { description, ...rest } = property;
    return {
      name,
      in: where,
      required: where === "path" || required.has(name),
      ...(description ? { description } : {}),
      schema: rest,
    };
  });
}

/** The `/api/users/{id}` form of a path as Hono writes it (`/api/users/:id`). */
export function honoPath(path: string): string {
  return path.replace(/\{([^}]+)\}/g, ":$1");
}

/**
 * Builds the OpenAPI 3.1 document of `routes`, served from `publicUrl` (PUBLIC_URL) when it is
 * set.
 */
export function buildOpenApiDocument(routes: ApiRoute[], publicUrl?: string): Json {
  const schemas: Record<string, Json> = {};
  for (
    const [registry, io] of [[requestSchemas, "input"], [responseSchemas, "output"]] as const
  ) {
    const converted = z.toJSONSchema(registry, { io, uri: (id) => COMPONENTS + id, override })
      .schemas;
    for (const [id, schema] of Object.entries(converted)) {
      if (schemas[id]) throw new Error(`Schema id "${id}" is registered twice`);
      schemas[id] = component(schema as Json);
    }
  }

  const paths: Record<string, Record<string, Json>> = {};
  for (const route of routes) {
    const responses: Record<string, Json> = {};
    for (const [status, spec] of Object.entries(route.responses)) {
      responses[status] = {
        description: spec.description,
        ...(spec.schema
          ? { content: { "application/json": { schema: schemaOf(spec.schema, "output") } } }
          : {}),
      };
    }
    const operation: Json = {
      operationId: route.operationId,
      summary: route.summary,
      ...(route.description ? { description: route.description } : {}),
      tags: [route.tag],
      ...(route.public ? { security: [] } : {}),
      parameters: [...parameters(route.params, "path"), ...parameters(route.query, "query")],
      ...(route.body
        ? {
          requestBody: {
            required: true,
            content: {
              [route.body.type === "json" ? "application/json" : "multipart/form-data"]: {
                schema: schemaOf(route.body.schema, "input"),
              },
            },
          },
        }
        : {}),
      responses,
    };
    (paths[route.path] ??= {})[route.method] = operation;
  }

  return {
    openapi: "3.1.0",
    info: {
      title: "Chat server admin API",
      version: "1.0.0",
      description: "Users, rooms and participants of the directory, room history, and " +
        "publishing messages and files to every protocol's clients. Errors are JSON " +
        "`{status, message}`. A path called with a method it does not have is answered 405 " +
        "(`MethodNotAllowed`) with an `Allow` header naming the methods it has; an unknown " +
        "path 404.",
    },
    tags: [
      { name: "users", description: "Directory users; their profile fills in what tokens lack." },
      { name: "rooms", description: "Rooms, owners and participants: who may enter." },
      { name: "messages", description: "History and publishing." },
      { name: "meta", description: "This document." },
    ],
    // Behind a proxy that serves the server under a path, tools would otherwise call the paths
    // at the host's root. Without PUBLIC_URL the server takes itself to be at its host's root,
    // which OpenAPI's default base ("/" of wherever the document came from) already says.
    ...(publicUrl === undefined ? {} : { servers: [{ url: publicUrl }] }),
    security: [{ bearerAuth: [] }],
    paths,
    components: {
      schemas,
      // No operation answers it (OpenAPI has no place for a method a path lacks), so it stands
      // here for tools and readers, named in info.description.
      responses: {
        MethodNotAllowed: {
          description: "The path has no such method.",
          headers: {
            Allow: {
              description: "The methods the path has, e.g. `GET, PUT, DELETE`.",
              schema: { type: "string" },
            },
          },
          content: { "application/json": { schema: { $ref: COMPONENTS + "Error" } } },
        },
      },
      securitySchemes: {
        bearerAuth: {
          type: "http",
          scheme: "bearer",
          description: "ADMIN_TOKEN, or a JWT whose role is admin or super_admin (the " +
            "attachments upload also takes any user's JWT, for rooms that user may enter).",
        },
      },
    },
  };
}
