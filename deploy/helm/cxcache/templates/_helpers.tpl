{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "cxcache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified name: the release name when it already contains the chart name. */}}
{{- define "cxcache.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "cxcache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cxcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cxcache.labels" -}}
{{ include "cxcache.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Secret holding CXCACHE_UPSTREAM__CREDENTIALS: the existing one, or ours. */}}
{{- define "cxcache.credentialsSecret" -}}
{{- default (printf "%s-credentials" (include "cxcache.fullname" .)) .Values.credentials.existingSecret -}}
{{- end -}}

{{- define "cxcache.credentialsKey" -}}
{{- if .Values.credentials.existingSecret -}}{{ .Values.credentials.key }}{{- else -}}CXCACHE_UPSTREAM__CREDENTIALS{{- end -}}
{{- end -}}

{{- define "cxcache.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Where the config file is mounted, and the file itself. */}}
{{- define "cxcache.configPath" -}}/etc/cxcache/cxcache.toml{{- end -}}

{{/* Environment shared by the server and the config check. */}}
{{- define "cxcache.containerEnv" -}}
env:
  - name: CXCACHE_UPSTREAM__CREDENTIALS
    valueFrom:
      secretKeyRef:
        name: {{ include "cxcache.credentialsSecret" . }}
        key: {{ include "cxcache.credentialsKey" . }}
{{- with .Values.env }}
{{ toYaml . | indent 2 }}
{{- end }}
{{- end -}}

{{- define "cxcache.volumeMounts" -}}
volumeMounts:
  - { name: config, mountPath: /etc/cxcache, readOnly: true }
{{- if .Values.tls.enabled }}
  - { name: tls, mountPath: {{ .Values.tls.mountPath }}, readOnly: true }
{{- end }}
{{- end -}}
