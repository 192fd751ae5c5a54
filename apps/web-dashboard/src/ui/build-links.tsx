import type { BuildLinks } from '@vmlb/fleet';
import { href, usePoll } from './hooks';
import { useSession } from './session';
import type { BuildRecord } from './types';

/**
 * A build's links elsewhere, beside its title: its project's page (the trend of its last
 * builds) and, when the scheduler has VMLB_GRAFANA_URL, its time range on the fleet's Grafana
 * (or Prometheus) view. Asked again when the build's state changes (its range ends with it).
 */
export function BuildLinksBar({ record }: { record: BuildRecord }) {
  const { api } = useSession();
  const links = usePoll((signal) => api.json<BuildLinks>(`/v1/builds/${encodeURIComponent(record.id)}/links`, signal), [api, record.id, record.state], 300_000);
  return (
    <span class="build-links">
      {record.projectName && (
        <a class="btn" href={href(['projects', record.projectName])} data-testid="project-page-link" title={`the last builds of project ${record.projectName}`}>
          Project trend
        </a>
      )}
      {links.data?.grafana && (
        <a class="btn external-link" href={links.data.grafana} target="_blank" rel="noopener noreferrer" data-testid="grafana-link" title="this build's time range on the fleet's metrics">
          Metrics
        </a>
      )}
    </span>
  );
}
