{{/* The release's full name, cut to the 63 characters a label value allows. */}}
{{- define "tether-hub.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tether-hub.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tether-hub.labels" -}}
{{ include "tether-hub.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tether-hub.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tether-hub.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tether-hub.configSecret" -}}
{{- default (printf "%s-config" (include "tether-hub.fullname" .)) .Values.config.existingSecret -}}
{{- end -}}

{{- define "tether-hub.claimName" -}}
{{- default (printf "%s-data" (include "tether-hub.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* "true" when more than one replica runs. */}}
{{- define "tether-hub.several" -}}
{{- if gt (int .Values.replicas) 1 -}}true{{- end -}}
{{- end -}}

{{/* "true" when the data dir is the PVC (one replica only: it is a single-writer database). */}}
{{- define "tether-hub.persistent" -}}
{{- if and .Values.persistence.enabled (not (include "tether-hub.several" .)) -}}true{{- end -}}
{{- end -}}

{{/* The address the other replicas dial to reach this pod's peer listener. */}}
{{- define "tether-hub.peerAdvertise" -}}
{{- default (printf "$(POD_IP):%d" (int .Values.peers.port)) .Values.peers.advertise -}}
{{- end -}}

{{/* Fails early on values that cannot work. */}}
{{- define "tether-hub.validate" -}}
{{- $replicas := int .Values.replicas -}}
{{- if and (gt $replicas 1) (not .Values.redis.existingSecret) -}}
{{- fail (printf "replicas: %d needs redis.existingSecret, a Secret holding the Redis URL under key %q: several replicas share deliveries, the latest pushes and which replica holds each agent through Redis (docs/hub.md#several-replicas)" $replicas .Values.redis.key) -}}
{{- end -}}
{{- if and (gt $replicas 1) (not .Values.peers.existingSecret) -}}
{{- fail (printf "replicas: %d needs peers.existingSecret, a Secret holding under key %q a secret of 16 bytes or more (openssl rand -hex 32): replicas forward CI requests to each other with it (docs/hub.md#several-replicas)" $replicas .Values.peers.key) -}}
{{- end -}}
{{- if and .Values.peers.existingSecret (not .Values.redis.existingSecret) -}}
{{- fail "peers.existingSecret needs redis.existingSecret: replicas find which one holds an agent's tunnel in Redis" -}}
{{- end -}}
{{- if and (gt $replicas 1) .Values.persistence.existingClaim -}}
{{- fail (printf "persistence.existingClaim cannot be used with replicas: %d: the data dir is a single-writer database, so each replica keeps its own (an emptyDir) and shares through Redis; remove persistence.existingClaim" $replicas) -}}
{{- end -}}
{{- end -}}
