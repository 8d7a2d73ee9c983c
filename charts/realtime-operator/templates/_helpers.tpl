{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "realtime-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, suffixed by the chart name unless it holds it. */}}
{{- define "realtime-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "realtime-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "realtime-operator.labels" -}}
helm.sh/chart: {{ include "realtime-operator.chart" . }}
{{ include "realtime-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: realtime-operator
{{- end }}

{{/* Selector labels: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "realtime-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "realtime-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "realtime-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "realtime-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference: repository@digest when a digest is set, else repository:tag (the tag
defaulting to the chart's appVersion). */}}
{{- define "realtime-operator.imageRef" -}}
{{- $img := index . 0 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default (index . 1).Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{- define "realtime-operator.image" -}}
{{- include "realtime-operator.imageRef" (list .Values.image .) }}
{{- end }}

{{- define "realtime-operator.serverImage" -}}
{{- include "realtime-operator.imageRef" (list .Values.serverImage .) }}
{{- end }}

{{/* The Lease that elects the active replica; one per release. */}}
{{- define "realtime-operator.leaseName" -}}
{{- include "realtime-operator.fullname" . }}
{{- end }}

{{/* The RealtimeCluster API group (must match crds/realtimecluster.yaml). */}}
{{- define "realtime-operator.apiGroup" -}}
realtime.dev
{{- end }}

{{/*
What the controller does in the namespaces it watches, and nothing more (operator/src/controller.rs
and apply.rs). Every child kind is watched (list, watch) to correct drift and written with
server-side apply (patch; create when the child is new). Deleted only where the operator prunes:
StatefulSets, Services, Secrets, Ingresses, NetworkPolicies, and the PersistentVolumeClaims an older version's
Redis storage left behind (list, delete: never read, never created). Deployments and
StatefulSets are also deleted, with their pods orphaned and adopted again, when an immutable
field (the selector) differs from what this version builds (operator/src/plan.rs).
`get`: the Deployment and StatefulSet are read before every apply (immutable fields) and while
paused, the Redis password Secret before generating one. Server pods are listed (to read each
one's connection count and Redis link on its admin port), patched (only the
controller.kubernetes.io/pod-deletion-cost annotation) and deleted when cut off from Redis
while their peers are not (self-heal, rate-limited; operator/src/load.rs).
Status is written by server-side apply on the status subresource.
PodDisruptionBudgets are deleted too: those of a highly available managed Redis, when it is
turned off (the server's is never deleted). So every kind the operator sets ownerReferences on
carries `delete`, which the OwnerReferencesPermissionEnforcement admission plugin requires;
`rbac.ownerReferencesPermissionEnforcement` no longer changes anything.
Kept in one place so the cluster-wide and the namespaced mode grant exactly the same rights.
*/}}
{{- define "realtime-operator.workloadRules" -}}
- apiGroups: [{{ include "realtime-operator.apiGroup" . | quote }}]
  resources: ["realtimeclusters"]
  verbs: ["list", "watch"]
- apiGroups: [{{ include "realtime-operator.apiGroup" . | quote }}]
  resources: ["realtimeclusters/status"]
  verbs: ["patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses", "networkpolicies"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
