// Type-checked (tsc --strict) against the types openapi-typescript generates from Sluice's
// documents (tests/api/generators.rs): a typed client must be able to send events with nested
// `data`, read its events back, and run the admin API's schema operations.
import createClient from "openapi-fetch";
import type { paths } from "./public";
import type { paths as adminPaths } from "./admin";

export async function sendAndRead(baseUrl: string, key: string): Promise<string[]> {
  const client = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${key}` } });
  const { data, error } = await client.POST("/v1/events/batch", {
    body: {
      events: [
        {
          signal: "page_view",
          identity: { type: "account", id: "acc_123" },
          data: { path: "/pricing", utm: { source: "news", tags: ["a", "b"] }, depth: 2 },
          reference: "evt-001",
        },
        { signal: "mrr", identity: { type: "account", id: "acc_123" }, data: { value: 499.5 }, version: "latest" },
      ],
    },
  });
  if (error) throw new Error(error.error);
  const ids: string[] = data.data.map((accepted) => accepted.id);
  const signals = await client.GET("/v1/signals");
  const slugs: string[] = (signals.data?.data ?? []).map((s) => s.slug);
  const page = await client.GET("/v1/events", { params: { query: { signal: "page_view", limit: 10 } } });
  const nested: unknown = page.data?.data[0]?.data["utm"];
  console.log(slugs, nested, page.data?.next_cursor ?? null);
  return ids;
}

export async function addSchema(baseUrl: string, token: string, tenant: string): Promise<number> {
  const admin = createClient<adminPaths>({ baseUrl, headers: { Authorization: `Bearer ${token}` } });
  const { data, error } = await admin.POST("/admin/v1/tenants/{tenant_id}/signals/{slug}/schemas", {
    params: { path: { tenant_id: tenant, slug: "mrr" } },
    body: { schema: { type: "object", properties: { value: { type: "number" } }, required: ["value"] } },
  });
  if (error) throw new Error(error.error);
  return data.data.version;
}
